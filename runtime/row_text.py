"""Text of one generated row, token by token: incremental detokenisation and stop strings,
shared by generate.py (run, stream) and the server's engine."""

from __future__ import annotations


class RowText:
    """Incremental detokenisation and stop strings of one row.

    Decodes only the ids since the last stable point (the prefix/read offsets of TGI and
    vLLM), so a step costs the same at token 10 and token 2,000: text is appended once it
    does not end in U+FFFD (an incomplete UTF-8 sequence). A tail that could still grow into
    a stop string is held back; a stop string ends the row and is not part of the text."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tok, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of `text` handed out
        self.stopped = False
        self._prefix = 0  # ids[_prefix:_read] decode to the end of `text` (the context for the next piece)
        self._read = 0
        self._prefix_text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; returns the text that became final (possibly '')."""
        self.ids.append(token_id)
        full = self._decode(self.ids[self._prefix:])
        if len(full) > len(self._prefix_text) and not full.endswith("\ufffd"):
            start = len(self.text)
            self.text += full[len(self._prefix_text):]
            self._prefix, self._read = self._read, len(self.ids)
            self._prefix_text = self._decode(self.ids[self._prefix:self._read])
            self._check_stops(start)
        if self.stopped:
            return self._emit(len(self.text))
        hold = 0
        for s in self.stops:  # the longest tail of the text that is a proper prefix of a stop string
            for k in range(min(len(s) - 1, len(self.text) - self.emitted), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        return self._emit(len(self.text) - hold)

    def _check_stops(self, start: int) -> None:
        cut = None
        for s in self.stops:
            i = self.text.find(s, max(0, start - len(s) + 1))
            if i >= 0 and (cut is None or i < cut):
                cut = i
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True

    def flush(self) -> str:
        """At the end of the row: the rest, including an incomplete UTF-8 tail as U+FFFD."""
        if not self.stopped and self._read < len(self.ids):
            start = len(self.text)
            self.text += self._decode(self.ids[self._prefix:])[len(self._prefix_text):]
            self._read = len(self.ids)
            self._check_stops(start)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted:upto], upto
        return piece
