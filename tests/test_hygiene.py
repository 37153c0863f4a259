"""Cheap greps that keep the one seam honest (in the product and in these tests)."""
import re
from pathlib import Path

import botlxc

HERE = Path(__file__).resolve().parent
SOURCE = Path(botlxc.__file__).resolve().read_text()


def code_lines(text):
    """Source without comment-only lines and docstring-ish prose lines."""
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def test_exactly_one_subprocess_run():
    assert SOURCE.count("subprocess.run(") == 1
    assert len(re.findall(r"\bsubprocess\.\w+\(", SOURCE)) == 1, \
        "only Runner._exec calls into subprocess"


def test_no_other_way_to_start_a_process():
    code = "\n".join(code_lines(SOURCE))
    for forbidden in ("shell=True", "os.system", "os.popen", "os.exec", "os.spawn",
                      "os.fork", "pty.", "Popen(", "check_output(", "check_call(",
                      "asyncio.create_subprocess"):
        assert forbidden not in code, forbidden
    assert not re.search(r"^\s*(import sh\b|from sh import)", SOURCE, re.M)


def test_the_run_sits_in_runner_exec():
    body = SOURCE[SOURCE.index("    def _exec(self"):SOURCE.index("    def script(self")]
    assert "subprocess.run(argv," in body


def test_unit_tests_use_only_the_one_fake():
    """No allow_unregistered, no mocks, no monkeypatching of botlxc itself."""
    forbidden = ("allow_unregistered(True)", "unittest.mock", "import mock", "mocker",
                 "monkeypatch.setattr(botlxc", "setattr(botlxc")
    for path in sorted(HERE.glob("*.py")):
        if path.name.startswith("test_live") or path.name == "test_hygiene.py":
            continue
        text = path.read_text()
        for word in forbidden:
            assert word not in text, "%s uses %s" % (path.name, word)


def section(number):
    """The text of botlxc.py's section `number` (its header line to the next one)."""
    start = re.search(r"^# -+ %d\. " % number, SOURCE, re.M).start()
    end = re.search(r"^# -+ %d\. " % (number + 1), SOURCE, re.M)
    return SOURCE[start:end.start() if end else len(SOURCE)]


def test_components_are_named_only_in_the_registry():
    """Sections 10-14 ask COMPONENTS: no component or engine named in code, messages or
    comments there (the registry, section 9, and the CLI's help text may)."""
    names = set(botlxc.COMPONENTS) | {e.name for c in botlxc.COMPONENTS.values()
                                      for e in c.engines}
    for number in range(10, 15):
        text = section(number)
        for name in sorted(names):
            assert not re.search(r"""["']%s["']""" % re.escape(name), text), \
                "section %d has the literal %r" % (number, name)
        # engine names that are no ordinary words (the day-2 code says "cache" for caches)
        for name in ("minio", "rclone"):
            assert name not in text.lower(), "section %d names %s" % (number, name)
