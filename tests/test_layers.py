"""The import-direction check (toolkit.tools.layers) on a planted tree, and on ours."""

from pathlib import Path

from toolkit.tools import layers


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _planted(tmp_path, files):
    base = {"toolkit/__init__.py": "", "toolkit/errors.py": "", "toolkit/util/__init__.py": "",
            "toolkit/train/__init__.py": "", "toolkit/train/loop.py": "", "analysis/__init__.py": ""}
    return layers.check(_tree(tmp_path, {**base, **files}))


def test_an_upward_import_is_named_with_its_line_even_inside_a_function(tmp_path):
    found = _planted(tmp_path, {"toolkit/util/jsonl.py": "import json\n\ndef f():\n    from toolkit.train import loop\n"})
    assert [str(v) for v in found] == [
        "toolkit/util/jsonl.py:4: toolkit.util.jsonl imports toolkit.train.loop: "
        "upward, from 'shared utilities' to 'training and serving'"]


def test_downward_and_relative_imports_pass(tmp_path):
    assert _planted(tmp_path, {"toolkit/train/step.py": "from toolkit.errors import X\nfrom . import loop\n",
                               "analysis/x.py": "from toolkit.train.loop import y\n"}) == []


def test_a_cycle_between_packages_on_one_floor_is_named(tmp_path):
    found = _planted(tmp_path, {"toolkit/serve/__init__.py": "", "toolkit/serve/app.py": "import toolkit.train.loop\n",
                                "toolkit/train/hook.py": "from toolkit.serve import app\n"})
    assert len(found) == 1 and "cycle on one floor" in str(found[0])


def test_our_imports_point_downward():
    assert [str(v) for v in layers.check(Path(layers.__file__).resolve().parents[2])] == []


def test_the_import_graph_names_each_package_and_what_it_imports(tmp_path):
    root = _tree(tmp_path, {"toolkit/__init__.py": "", "toolkit/errors.py": "", "toolkit/util/__init__.py": "",
                            "toolkit/util/jsonl.py": "from toolkit.errors import E\n", "analysis/__init__.py": "",
                            "analysis/x.py": "from toolkit.util.jsonl import f\nfrom analysis import y\n"})
    graph = layers.import_graph(root)
    assert graph["toolkit.util"] == {"toolkit.errors"} and graph["analysis"] == {"toolkit.util"}
    assert graph["toolkit.errors"] == set()
