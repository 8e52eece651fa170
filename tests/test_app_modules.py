"""Quick unit tests of the app's computation modules (no page run, no model loaded) and of the app
convention itself: `app` imports as a package from any folder, and every page is a `main()` of
widgets and layout, called on the file's last line. The pages themselves run in tests/test_app_*.py
(marked slow) and tests/test_browser.py."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import mor
from mor.model.loading import load_config

pytest.importorskip("streamlit")

from app import corpus_stats, kv_cache, live_decode, mechanisms, run_queue, traces  # noqa: E402
from app.checkpoints import default_comparison  # noqa: E402
from mor.analysis.kv import CACHE_STATES, cache_states  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "app"
PAGES = sorted((APP / "app_pages").glob("*.py"))


# ---- the convention -----------------------------------------------------------------------------

@pytest.mark.slow  # a fresh interpreter imports torch, transformers and streamlit
def test_app_imports_as_a_package_from_another_folder(tmp_path):
    modules = sorted(p.stem for p in APP.glob("*.py") if p.stem not in ("__init__", "main"))
    code = "import app, " + ", ".join(f"app.{m}" for m in modules) + "; print(app.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()) == APP / "__init__.py"


def test_no_app_file_touches_sys_path():
    for path in [*APP.glob("*.py"), *PAGES]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"], path


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_every_page_is_a_main_called_last(page):
    """Module level holds only the docstring, imports, constants and functions, then `main()`."""
    body = ast.parse(page.read_text(encoding="utf-8")).body
    last = body[-1]
    assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and last.value.func.id == "main"
    assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in body)
    for node in body[:-1]:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        assert docstring or isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.Assign)), (
            f"{page.name}:{node.lineno}: module-level {type(node).__name__}; pages keep statements inside main()")


# ---- kv_cache: which token is cached at which step ----------------------------------------------

def test_cache_states_follow_each_strategy():
    cached, shared, exited = CACHE_STATES
    assert cache_states([1, 3], 3, "full") == [[cached] * 3, [cached] * 3]
    assert cache_states([1, 3], 3, "recursion_wise") == [[cached, exited, exited], [cached] * 3]
    assert cache_states([1, 3], 3, "shared") == [[cached, exited, exited], [cached, shared, shared]]
    with pytest.raises(ValueError, match="strategy"):
        cache_states([1], 3, "none")


def test_cache_grid_and_entry_counts_agree_with_the_states():
    trace = {"tokens": ["a", "b", "c", "d"], "depths": [1, 2, 3, 3], "num_recursions": 3}
    grid = kv_cache.cache_grid(trace, "shared")
    assert len(grid) == 4 * 3 and set(grid["state"]) == set(kv_cache.STATE_LABELS.values())
    assert grid[(grid["token"] == "c") & (grid["step"] == 2)]["state"].item() == "reads step 1's K/V"
    counts = {row["cache"].split()[0]: (row["entries"], row["ratio"]) for row in kv_cache.entry_counts(trace)}
    # Every token at every step: 12; recursion-wise: the depths' sum (9); sharing: step 1 only (4).
    assert counts == {"every": (12, 1.0), "recursion-wise": (9, 0.75), "recursive": (4, 0.333)}


# ---- live_decode ----------------------------------------------------------------------------------

class LetterTokenizer:
    """Ids 0..25 are the letters a..z (a byte-level token of one ASCII letter is that letter)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - 97 for c in text]}

    def convert_ids_to_tokens(self, ids):
        return [chr(97 + i) for i in ids]


def test_settings_compared_side_by_side():
    assert live_decode.all_settings(3, "expert_choice") == [
        {}, {"fixed_depth": 1}, {"fixed_depth": 2}, {"fixed_depth": 3}, {"depth_cap": 1}, {"depth_cap": 2}]
    assert live_decode.all_settings(3, "none") == [{}, {"fixed_depth": 1}, {"fixed_depth": 2}]
    assert [live_decode.setting_label(s, "none") for s in ({}, {"fixed_depth": 2})] == [
        "every token, full depth", "fixed depth 2"]
    assert live_decode.setting_label({"depth_cap": 1}, "expert_choice") == "depth cap 1"


def test_prompt_is_cut_from_the_left_to_fit_the_context():
    assert live_decode.prompt_ids(LetterTokenizer(), "abcdef", context=6, new_tokens=2) == ([2, 3, 4, 5], 2)
    assert live_decode.prompt_ids(LetterTokenizer(), "ab", context=6, new_tokens=2) == ([0, 1], 0)


def test_distinct_rows_keep_the_tokens_whose_depth_is_known():
    tokens = [[0, 1, 2], [0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 9, 9]]
    depths = [[1, 2], [1, 2], [3, 3], [1, 1], [2, 2]]
    rows, distinct = live_decode.distinct_rows(LetterTokenizer(), tokens, depths, limit=2)
    assert rows == [(["a", "b"], [1, 2]), (["d", "e"], [3, 3])] and distinct == 2


def test_speed_table_is_relative_to_the_comparison_when_there_is_one():
    rows = [{"checkpoint": "a", "setting": "router decides", "tokens/s": 30.0},
            {"checkpoint": "a", "setting": "fixed depth 1", "tokens/s": 60.0}]
    table, baseline = live_decode.speed_table(rows)
    assert baseline["setting"] == "router decides" and table["relative speed"].tolist() == [1.0, 2.0]
    table, baseline = live_decode.speed_table([*rows, {"checkpoint": "b", "setting": "x", "tokens/s": 120.0}])
    assert baseline["checkpoint"] == "b" and table["relative speed"].tolist() == [0.25, 0.5, 1.0]


# ---- the other computation modules ---------------------------------------------------------------

def test_plan_groups_label_every_step():
    plan = {"prelude": [0], "steps": [[1, 2], [1, 2]], "coda": [3]}
    assert mechanisms.plan_groups(plan) == [("First layer (unique)", [0]), ("Recursion 1", [1, 2]),
                                            ("Recursion 2", [1, 2]), ("Last layer (unique)", [3])]
    assert mechanisms.plan_groups({"prelude": [], "steps": [[0]], "coda": []}) == [("Recursion 1", [0])]


def test_compare_table_pairs_tokens_only_when_both_tokenize_alike():
    a = {"tokens": ["x", "y"], "token_ids": [1, 2], "depths": [1, 3], "token_nll": [None, 2.0]}
    b = {**a, "depths": [3, 3], "token_nll": [None, 1.5]}
    table = traces.compare_table(a, b)
    assert table["depth_b_minus_a"].tolist() == [2, 0] and table["nll_b_minus_a"].tolist()[1] == -0.5
    assert pd.isna(table["nll_a"][0])
    assert traces.compare_table(a, {**b, "token_ids": [1, 3]}) is None


def test_uploads_are_utf8_or_a_clear_error():
    assert corpus_stats.decode_upload("\ufeffcafé".encode("utf-8")) == "café"
    with pytest.raises(ValueError, match="UTF-16"):
        corpus_stats.decode_upload("hi".encode("utf-16"))
    with pytest.raises(ValueError, match=r"byte 3 is 0xe9"):
        corpus_stats.decode_upload("café".encode("latin-1"))
    assert corpus_stats.display_name("<b>`x`.txt") == "`_b__x_.txt`"


def test_default_comparison_is_the_first_vanilla_checkpoint(shipped_names, checkpoint_name):
    """Read from config.json alone: the first other checkpoint with no router and one recursion."""
    others = [n for n in shipped_names if n != checkpoint_name]
    plain = [n for n in others if (lambda c: c.routing == "none" and c.num_recursions == 1)(
        load_config(mor.resolve_checkpoint(n)))]
    assert plain, "the shipped checkpoints include vanilla"
    assert default_comparison(shipped_names, checkpoint_name) == others.index(plain[0]) + 1
    assert default_comparison([checkpoint_name], checkpoint_name) == 0  # "(none)"


# ---- the run queue of the live throughput page ----------------------------------------------------

def test_run_queue_runs_one_at_a_time_first_come_first_served():
    """Eight threads ask for the turn while a ninth holds it: they run one at a time, in the order
    they arrived, each told how many were ahead, and the queue is empty afterwards."""
    queue = run_queue.RunQueue()
    inside, most_inside, order, told = [0], [0], [], {}
    lock = threading.Lock()

    def work(i: int) -> None:
        with queue.turn(on_wait=lambda ahead: told.setdefault(i, ahead), poll=0.01):
            with lock:
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
            order.append(i)
            time.sleep(0.01)
            with lock:
                inside[0] -= 1

    threads = []
    with queue.turn():  # hold the turn until all eight wait
        for i in range(8):
            threads.append(threading.Thread(target=work, args=(i,)))
            threads[-1].start()
            while len(queue) < i + 2:  # thread i has its ticket before the next one starts
                time.sleep(0.001)
    for t in threads:
        t.join(10)
    assert order == list(range(8)) and most_inside[0] == 1
    assert told == {i: i + 1 for i in range(8)}  # the first callback: everyone arrived behind the holder
    assert len(queue) == 0


def test_run_queue_gives_the_ticket_back_when_a_waiting_session_stops():
    """A waiting session whose page raises (closed or rerun) leaves the queue; a full queue refuses
    the next run with a clear error instead of growing."""
    queue = run_queue.RunQueue(max_waiting=1)
    errors = []

    def stopped_session():
        def on_wait(ahead):
            raise RuntimeError("session closed")
        try:
            with queue.turn(on_wait=on_wait):
                pass
        except RuntimeError as err:
            errors.append(str(err))

    ran = []

    def waiting_session():
        with queue.turn(poll=0.01):
            ran.append(True)

    with queue.turn():
        t = threading.Thread(target=stopped_session)
        t.start()
        t.join(5)
        assert errors == ["session closed"] and len(queue) == 1
        waiter = threading.Thread(target=waiting_session)
        waiter.start()
        while len(queue) < 2:
            time.sleep(0.001)
        with pytest.raises(run_queue.QueueFull, match="1 runs are already waiting"):
            with queue.turn():
                pass
        assert not ran
    waiter.join(5)
    assert ran == [True] and len(queue) == 0


def test_arithmetic_sample_is_right_held_out_and_in_the_probe_format():
    """The arithmetic sample's problems are correct sums, from the probe's held-out bucket (never
    trained on), written in the format the shipped probe checkpoint records (`mor probe`)."""
    import json

    from app.samples import ADDITION, PROBE_CHECKPOINT, SAMPLE_TEXTS
    from mor.data.addition import pair_bucket
    from mor.model.loading import resolve_checkpoint

    record = json.loads((resolve_checkpoint(PROBE_CHECKPOINT) / "training.json").read_text())["probe"]
    assert ADDITION.record() == record and not record["answer_reversed"]
    k = record["digits"]
    lines = SAMPLE_TEXTS["Arithmetic (addition)"].splitlines()
    assert len(lines) >= 3
    for line in lines:
        a, b, c = re.fullmatch(rf"(\d{{{k}}})\+(\d{{{k}}})=(\d{{{k + 1}}})", line).groups()
        assert int(a) + int(b) == int(c) and pair_bucket(int(a), int(b)) == 0
