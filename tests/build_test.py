"""BUILD names every Python file: a py_library per package, py_binary per script, py_test per
test file. The BUILD file is evaluated as Starlark-compatible Python with recording stubs."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_build() -> dict[str, list[dict]]:
  rules: dict[str, list[dict]] = {"py_library": [], "py_binary": [], "py_test": []}
  env = {
      "load": lambda *a, **k: None,
      "package": lambda **k: None,
      "requirement": lambda name: f"@pypi//{name}",
      "glob": lambda *a, **k: [],
  }
  for kind in rules:
    env[kind] = lambda kind=kind, **kw: rules[kind].append(kw)
  exec(compile((ROOT / "BUILD").read_text(), "BUILD", "exec"), env)
  return rules


def python_files(*dirs: str) -> set[str]:
  return {str(p.relative_to(ROOT)) for d in dirs for p in (ROOT / d).rglob("*.py")
          if "__pycache__" not in p.parts}


def srcs(rules: list[dict]) -> set[str]:
  return {s for r in rules for s in r["srcs"]}


def test_every_python_file_is_named_in_build():
  rules = load_build()
  named = srcs(rules["py_library"]) | srcs(rules["py_binary"]) | srcs(rules["py_test"])
  missing = python_files("hrm_jax", "experiments", "tests", "benchmarks") - named
  assert not missing, f"add these files to BUILD: {sorted(missing)}"
  stale = {s for s in named if not (ROOT / s).exists()}
  assert not stale, f"BUILD names files that do not exist: {sorted(stale)}"


def test_one_py_test_per_test_file_and_one_py_binary_per_script():
  rules = load_build()
  tests = [r["srcs"] for r in rules["py_test"]]
  assert all(len(s) == 1 for s in tests)
  assert {s[0] for s in tests} == {f for f in python_files("tests") if f.endswith("_test.py")}
  binaries = [r["srcs"] for r in rules["py_binary"]]
  assert all(len(s) == 1 for s in binaries)
  scripts = {f for f in python_files("experiments", "benchmarks")
             if f.count("/") == 1 and not f.endswith("__init__.py")}
  assert {s[0] for s in binaries} == scripts


def test_library_covers_the_package():
  rules = load_build()
  lib = next(r for r in rules["py_library"] if r["name"] == "hrm_jax")
  assert set(lib["srcs"]) == python_files("hrm_jax")
