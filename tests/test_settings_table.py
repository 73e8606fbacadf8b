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
