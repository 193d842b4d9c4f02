"""Harness: metrics on hand-made items with known answers (lm-eval's rules), task files,
built-in task loading, --limit, and evaluate() end to end on a tiny random model."""

import json
import math

import pytest

from edgedelta.errors import ConfigError
from edgedelta.evaluation import metrics
from edgedelta.evaluation.api import EvalConfig, evaluate
from edgedelta.evaluation.scoring import Request
from edgedelta.evaluation.tasks import TASKS, load_task, load_task_file, parse_task_list, select


class FixedScorer:
    """A scorer with known log-likelihoods: lm-eval's acc/acc_norm decisions can be checked by hand."""

    def __init__(self, table):
        self.table = table
        self.tokenizer = None

    def loglikelihood(self, requests, progress=False, desc=""):
        return [self.table[(r.context, r.continuation)] for r in requests]


def test_acc_vs_acc_norm_by_characters():
    # choice 0: -6 over 3 chars (-2/char); choice 1: -8 over 8 chars (-1/char)
    m = metrics.multiple_choice([[-6.0, -8.0]], [1], [[3, 8]])
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0


def test_ties_pick_first_choice_like_numpy_argmax():
    assert metrics.multiple_choice([[-1.0, -1.0]], [0], [[1, 1]])["acc"] == 1.0


def test_stderr_is_sample_std_over_sqrt_n():
    m = metrics.multiple_choice([[0, -1]] * 3 + [[-1, 0]], [0, 0, 0, 0], [[1, 1]] * 4)
    assert m["acc"] == 0.75
    assert math.isclose(m["acc_stderr"], math.sqrt(0.75 * 0.25 * 4 / 3) / 2)


def test_lambada_greedy_and_ppl():
    m = metrics.greedy_last_word([(-1.0, True), (-3.0, False)])
    assert m["acc"] == 0.5 and math.isclose(m["ppl"], math.exp(2.0))


def test_task_file_scored_like_builtin(tmp_path):
    tf = tmp_path / "plant.jsonl"
    tf.write_text(json.dumps({"question": "Q?", "choices": ["aa", "bbbbbbbb"], "answer": 1}) + "\n\n"
                  + json.dumps({"context": "C", "choices": ["x", "y", "z"], "answer": 0, "id": "c1"}) + "\n")
    task = load_task_file(tf)
    items = task.items
    assert [it.gold for it in items] == [1, 0] and items[1].id == "c1" and task.metric == "acc"
    assert items[0].continuations == (" aa", " bbbbbbbb") and items[0].norm_chars == (2, 8)
    table = {("Q?", " aa"): (-4.0, False), ("Q?", " bbbbbbbb"): (-6.0, False),
             ("C", " x"): (-1.0, True), ("C", " y"): (-2.0, False), ("C", " z"): (-3.0, False)}
    res = evaluate(None, config=EvalConfig(tasks=["ppl"], task_file=str(tf), ppl_texts=[]), scorer=FixedScorer(table))
    t = res["tasks"]["file:plant"]
    assert t["acc"] == 0.5 and t["acc_norm"] == 1.0 and res["average"] == 0.5
    assert t["correct"] == [0, 1]  # the primary metric (acc) per item, in item order


def test_paired_difference_by_hand():
    # task 1: d = 0, 1, 0, -1 (mean 0, sample variance 2/3); task 2: d = 1, 1 (mean 1, variance 0)
    diff, se = metrics.paired_difference([[1, 1, 0, 0], [1, 1]], [[1, 0, 0, 1], [0, 0]])
    assert diff == pytest.approx(0.5) and se == pytest.approx(math.sqrt(2 / 3 / 4) / 2)
    with pytest.raises(ValueError, match="same items"):
        metrics.paired_difference([[1, 0]], [[1]])


def test_paired_report_needs_per_item_scores_on_the_same_items():
    from edgedelta.evaluation.report import markdown_paired, paired_difference

    def ev(correct, config="c"):
        return {"config": config, "tasks": {"t": {"primary": "acc", "score": sum(correct) / len(correct), "correct": correct,
                                                  "acc_stderr": 0.0, "chance": 0.25, "majority": 0.5}}}

    rows = [{"method": "original", "eval": ev([1, 1, 1, 1])}, {"method": "deltallm-drop", "eval": ev([1, 1, 0, 1])},
            {"method": "shortgpt", "eval": ev([1, 0, 0, 0])}]
    assert paired_difference(rows[1]["eval"], rows[2]["eval"]) == pytest.approx((0.5, math.sqrt(1 / 3) / 2))  # d = 0, 1, 0, 1
    assert "- deltallm-drop − shortgpt: +50.0 ± 28.9 points (1.7 standard errors)" in markdown_paired(rows)
    assert "informative tasks (t)" in markdown_paired(rows)
    assert paired_difference(ev([1, 0]), ev([1, 0], config="other")) is None  # evaluated differently
    old = {"config": "c", "tasks": {"t": {"primary": "acc", "score": 0.5}}}  # saved before per-item scores
    assert paired_difference(rows[1]["eval"], old) is None and markdown_paired([rows[1], {"method": "laco", "eval": old}]) == ""


@pytest.mark.parametrize("line,msg", [
    ("not json", "not valid JSON"),
    ('{"choices": ["a", "b"], "answer": 0}', "context"),
    ('{"question": "q", "choices": ["a"], "answer": 0}', "at least 2"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "index"),
    ('{"question": "q", "choices": ["a", "b"], "answer": true}', "index"),
])
def test_task_file_errors_name_the_line(tmp_path, line, msg):
    tf = tmp_path / "bad.jsonl"
    tf.write_text(line + "\n")
    with pytest.raises(ConfigError, match=msg) as e:
        load_task_file(tf)
    assert "bad.jsonl:1" in str(e.value)


def test_unknown_task_lists_known_and_limit_checked():
    with pytest.raises(ConfigError, match="known: arc_easy"):
        parse_task_list("arc_easy,mmlu")
    with pytest.raises(ConfigError, match="positive"):
        EvalConfig(limit=0)
    assert parse_task_list("all")[0] == "ppl"


@pytest.mark.parametrize("name", list(TASKS))
def test_builtin_tasks_load(name):
    items = load_task(name)
    assert len(items) > 200
    it = items[0]
    assert len(it.contexts) == len(it.continuations) == len(it.norm_chars)
    assert 0 <= it.gold < len(it.continuations)
    assert all(int(i.id.split("/")[1]) < 1_000_000 for i in items)  # no unconditional-normalisation copies


def test_winogrande_partial_scoring_layout():
    it = load_task("winogrande")[0]
    assert it.contexts[0] != it.contexts[1] and it.continuations[0] == it.continuations[1]


def test_limit_is_a_fixed_subset():
    items = load_task("arc_easy")
    a, b = select(items, 25, seed=1), select(items, 25, seed=1)
    assert a == b and len(a) == 25 and select(items, 25, seed=2) != a
    assert select(items, 10_000) == list(items)


def test_evaluate_tiny_model_end_to_end(tiny_model, tiny_tok, tmp_path):
    txt = tmp_path / "manual.txt"
    txt.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    cfg = EvalConfig(tasks="ppl,arc_easy,winogrande,lambada", limit=4, ppl_texts=[str(txt)], ppl_tokens=128, ppl_seq_len=64)
    res = evaluate(tiny_model, tiny_tok, cfg)
    assert set(res["tasks"]) == {"arc_easy", "winogrande", "lambada"}
    assert all(t["n"] == 4 and 0 <= t["score"] <= 1 for t in res["tasks"].values())
    assert res["ppl"][str(txt)]["tokens"] == 126 and res["ppl"][str(txt)]["ppl"] > 1
    assert res["tasks"]["lambada"]["ppl"] > 1


def test_ppl_refuses_training_text(tiny_model, tiny_tok):
    with pytest.raises(ConfigError, match="training text"):
        evaluate(tiny_model, tiny_tok, EvalConfig(tasks="ppl", ppl_texts=["sotu-train"]))
