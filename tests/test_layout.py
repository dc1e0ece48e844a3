"""The package's shape: no import cycle (function-level imports included), tasks reached only
through the registry, and the shared commands free of task branches."""

import ast
import os

import pytest

from lct_flax import config_schema
from lct_flax import tasks
from lct_flax.tasks import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "lct_flax"
SHARED_COMMANDS = ("train.py", "lct_flax/export.py", "lct_flax/evaluate.py", "lct_flax/loop.py",
                   "lct_flax/export_format.py", "lct_flax/plan.py", "lct_flax/deviceless.py")


def module_files() -> dict[str, str]:
  """Module name -> file of every module in the package (packages by their __init__)."""
  files = {}
  for directory, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        files[module.removesuffix(".__init__")] = path
  return files


def imported_modules(path: str, known: set[str]) -> set[str]:
  """The package modules a file imports anywhere in it (in functions too), with the packages
  whose __init__ each import runs."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name in known)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        found.add(submodule if submodule in known else node.module)
  parents = {".".join(name.split(".")[:k]) for name in found
             for k in range(1, name.count(".") + 1)}
  return found | (parents & known)


def import_graph() -> dict[str, set[str]]:
  """Module -> the modules it imports; the registry also "imports" every registered task and the
  schema every task's rules module (and their packages). A module's own packages are initialised
  before it runs, so they are not edges."""
  files = module_files()
  graph = {module: {target for target in imported_modules(path, set(files))
                    if not (module + ".").startswith(target + ".")}  # itself, its own packages
           for module, path in files.items()}
  for importer, imported in (("lct_flax.tasks", tasks.MODULES.values()),
                             ("lct_flax.config_schema", config_schema.TASK_RULES.values())):
    graph[importer] |= {".".join(name.split(".")[:k]) for name in imported
                        for k in range(2, name.count(".") + 2)} - {importer}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for target in graph[module]:
      if target not in index:
        visit(target)
        low[module] = min(low[module], low[target])
      elif target in on_stack:
        low[module] = min(low[module], index[target])
    if low[module] == index[module]:
      component = []
      while not component or component[-1] != module:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        found.append(sorted(component))

  for module in sorted(graph):
    if module not in index:
      visit(module)
  return found


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 60 and "lct_flax.loop" in graph["lct_flax.tasks.base"] | {
      m for m in graph["lct_flax.tasks.classification"]}
  assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_only_the_tasks_package_imports_a_task_module():
  task_modules = set(tasks.MODULES.values()) | {"lct_flax.tasks.base"}
  for module, imported in import_graph().items():
    if not module.startswith("lct_flax.tasks"):
      assert not imported & task_modules, module


@pytest.mark.parametrize("path", SHARED_COMMANDS)
def test_the_shared_commands_never_name_a_task(path):
  tree = ast.parse(open(os.path.join(ROOT, path)).read())
  strings = {node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
  assert not strings & set(tasks.MODULES)
  assert not imported_modules(os.path.join(ROOT, path), set(module_files())) & {
      "lct_flax.detection", "lct_flax.classifier_steps", "lct_flax.classifier_evaluation"}


def test_every_registered_task_implements_the_interface_under_its_name():
  assert set(tasks.MODULES) == set(config_schema.TASK_RULES)
  for name in tasks.MODULES:
    task = tasks.get(name)
    assert isinstance(task, base.Task) and task.name == name
  assert tasks.of_config({}).name == "classification"
  assert tasks.of_model_section({"task": "detection"}).name == "detection"
  with pytest.raises(ValueError, match=r"unknown task 'segmentation'; registered tasks: "
                                       r"\['classification', 'detection'\]"):
    tasks.get("segmentation")


def test_the_detection_data_side_loads_no_model_code():
  import subprocess
  import sys
  code = ("import sys, lct_flax.detection.data; "
          "print([m for m in ('flax', 'lct_flax.detection.detector') if m in sys.modules])")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
  assert result.stdout.strip() == "[]"


def test_the_package_imports_from_outside_the_repository(tmp_path):
  """scripts/setup.sh installs the repository as an editable package (pyproject.toml)."""
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run(
      [sys.executable, "-c", "import configs.demo, lct_flax; print(lct_flax.__file__)"],
      capture_output=True, text=True, cwd=tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == os.path.join(ROOT, "lct_flax", "__init__.py")
