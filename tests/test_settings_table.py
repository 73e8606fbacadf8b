"""benchmarks/settings_table.py: the semi-supervised gap closed, for the current and the former model's rows."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "settings_table.py"


def load():
    spec = importlib.util.spec_from_file_location("settings_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(recipe, tag, values):
    return [{"recipe": recipe, "tag": tag, "seed": s, "precision@1": v, "map@r": v / 2} for s, v in enumerate(values)]


def test_gap_closed_per_model_and_rows_by_tag():
    table = load().tables(
        rows("semi_labelled_10", "", [0.60, 0.62]) + rows("semi_labelled_10", "all_labels", [0.80, 0.82])
        + rows("semi_propagation_10", "", [0.70, 0.72])  # half the gap
        + rows("semi_labelled_10", "head128", [0.50]) + rows("semi_labelled_10", "all_labels_head128", [0.90])
        + rows("semi_propagation_10", "head128", [0.60])  # a quarter
    )
    assert "| 10% labels, labelled only | semi_labelled_10 | 2 | 61.0 +- 1.4 | 30.5 +- 0.7 |  |" in table
    assert "- 10% labels + label propagation (k=20, alpha=0.5): closes 50.0% of the P@1 gap" in table
    assert "- former 128-d head: 10% labels + label propagation, k=10, alpha=0.9: closes 25.0% of the P@1 gap" in table
    assert "mean teacher: closes" not in table  # no rows, no goal line


def test_oltr_goal_lines_against_both_long_tail_baselines():
    def lt(recipe, tag, few, f, prefix=""):
        return [{"recipe": recipe, "tag": tag, "seed": 0, f"{prefix}few_shot": few, f"{prefix}f_measure": f,
                 "open/f_measure": f}]
    table = load().tables(lt("emoji_lt_balanced", "open", 0.30, 0.75) + lt("emoji_lt_instance", "open", 0.28, 0.80)
                          + lt("emoji_lt_oltr", "open", 0.36, 0.81, "oltr_") + lt("emoji_lt_balanced", "open_e8", 0.10, 0.10)
                          + [{**lt("emoji_lt_balanced", "ls1", 0.34, 0.77)[0], "classifier_few_shot": 0.30}]
                          + lt("emoji_lt_oltr", "ls1", 0.37, 0.80, "oltr_"))
    assert "- OLTR classifier - class-balanced baseline, few: +6.0 (goal >= +5)" in table
    assert "- OLTR classifier - instance-sampled baseline, open-set F: +1.0 (goal >= +5)" in table
    assert "| former 8 epochs: class-balanced normalized softmax, NCM | emoji_lt_balanced [open_e8] | 1 |" in table
    # the last-stride variant is compared within itself, and only where both rows exist
    assert "- last stride removed: OLTR classifier - class-balanced baseline, few: +3.0 (goal >= +5)" in table
    assert "- last stride removed: OLTR classifier - class-balanced baseline, open-set F: +3.0 (goal >= +5)" in table
    assert "last stride removed: OLTR classifier - instance-sampled" not in table
    # and against the baseline's own classifier (classifier_* metrics) where it was scored
    assert "- last stride removed: OLTR classifier - class-balanced baseline's classifier, few: +7.0 (goal >= +5)" in table
    assert "| last stride removed: class-balanced normalized softmax, its classifier | emoji_lt_balanced [ls1] | 1 |" in table
    assert "- OLTR classifier - class-balanced baseline's classifier" not in table
