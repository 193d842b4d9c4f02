"""`edgedelta run ART --prompt TEXT`: generate with ONNX Runtime, streaming text to stdout as
it is produced; time to first token and decode tokens/s go to stderr at the end. The prompt
goes through the tokenizer's chat template as a user turn when the artifact has one (an
instruct model given bare text often ends its answer at once); --raw feeds it as is."""

from __future__ import annotations

import dataclasses
import sys

from ..errors import ConfigError


def add_parser(subparsers):
    p = subparsers.add_parser("run", help="generate text from an ONNX artifact (streams to stdout)", description=__doc__)
    p.add_argument("artifact", help="artifact folder (model.onnx, config.json, tokenizer, manifest.json)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")
    mode.add_argument("--chat", action="store_true",
                      help="require the chat template (an error when the tokenizer has none; without --raw it is used anyway when present)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--provider", default="auto", help="auto|cpu|cuda (auto falls back to CPU)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every core this process may use)")
    p.add_argument("--spin", default="auto", choices=("auto", "on", "off"), help="ORT threads spin-wait between ops: on|off|auto (default auto: on when the cores are idle)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--prefill-chunk", type=int, default=None, help="prefill the prompt this many tokens at a time (less memory)")
    return p


def run(args) -> int:
    from ..runtime import GenerationConfig, Session

    if not args.prompt.strip():
        raise ConfigError("the prompt is empty")
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=tuple(args.stop), chat=args.chat,
                           prefill_chunk=args.prefill_chunk)
    sess = Session.from_dir(args.artifact, provider=args.provider, threads=args.threads, spin=args.spin)
    if not args.raw and getattr(sess.tokenizer, "chat_template", None):
        cfg = dataclasses.replace(cfg, chat=True)
    st = sess.stream(args.prompt, cfg)
    for piece in st:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    r = st.result
    n = len(r.token_ids)
    sys.stderr.write(f"[{n} tokens ({r.finish_reason}), prompt {r.prompt_tokens} tokens, load {sess.load_seconds:.2f} s, "
                     f"time to first token {r.ttft_s * 1000:.0f} ms, decode {r.decode_tokens_per_s:.1f} tok/s, "
                     f"provider {sess.provider}, {'chat template' if cfg.chat else 'raw prompt'}]\n")
    return 0
