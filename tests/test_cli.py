"""The `sevlm` entry point: OS errors on output paths end in one line naming the path."""

from __future__ import annotations

import os

import pytest

from sevlm import cli
from sevlm.errors import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """9 demo paintings prepared into a dataset folder -> (images_dir, dataset_dir)."""
    tmp = tmp_path_factory.mktemp("cli")
    assert cli.main(["demo-data", "--out", str(tmp / "raw"), "--n-images", "9", "--image-size", "32"]) == 0
    assert (
        cli.main(
            [
                "prepare",
                "--artemis-csv",
                str(tmp / "raw" / "artemis_dataset_release_v0.csv"),
                "--protocol",
                "sevlm",
                "--out",
                str(tmp / "ds"),
            ]
        )
        == 0
    )
    return tmp / "raw" / "images", tmp / "ds"


def _one_line_error(capsys, *must: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("sevlm ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(m in lines[0] for m in must), lines[0]
    return lines[0]


def _extract(images, ds, out) -> int:
    return cli.main(
        [
            "extract",
            "--images",
            str(images),
            "--dataset",
            str(ds),
            "--encoder",
            "tiny-random",
            "--workers",
            "0",
            "--out",
            str(out),
        ]
    )


def test_output_parent_folders_are_created(dataset, tmp_path, capsys):
    images, ds = dataset
    out = tmp_path / "new" / "deeper" / "f.h5"
    assert _extract(images, ds, out) == 0
    assert out.is_file()


def test_output_path_errors_are_one_line(dataset, tmp_path, capsys):
    images, ds = dataset
    capsys.readouterr()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # --out below a file: its parent cannot be created
    assert _extract(images, ds, a_file / "f.h5") == 1
    _one_line_error(capsys, "sevlm extract: error:", str(a_file))
    # --out is a folder where a file is expected
    (tmp_path / "adir").mkdir()
    assert (
        cli.main(
            [
                "prepare",
                "--artemis-csv",
                str(ds.parent / "raw" / "artemis_dataset_release_v0.csv"),
                "--out",
                str(a_file),
            ]
        )
        == 1
    )
    _one_line_error(capsys, "sevlm prepare: error:", str(a_file))


def test_folder_output_over_a_file_is_one_line(monkeypatch, capsys, tmp_path):
    from sevlm.commands import demo_data

    a_file = tmp_path / "taken"
    a_file.write_text("")
    monkeypatch.setattr(demo_data, "run", lambda args: a_file.mkdir())
    assert cli.main(["demo-data", "--out", str(a_file)]) == 1
    assert _one_line_error(capsys) == f"sevlm demo-data: error: {a_file}: exists and is not a folder"


def test_unwritable_output_is_one_line(monkeypatch, capsys, tmp_path):
    # Tests run as root here, where chmod cannot make a folder read-only: raise what open() would.
    from sevlm.commands import demo_data

    def refuse(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "x.json"))

    monkeypatch.setattr(demo_data, "run", refuse)
    assert cli.main(["demo-data", "--out", str(tmp_path / "ro")]) == 1
    assert _one_line_error(capsys) == f"sevlm demo-data: error: {tmp_path / 'ro' / 'x.json'}: Permission denied"


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    from sevlm.commands import demo_data

    monkeypatch.setattr(demo_data, "run", lambda args: open(tmp_path / "missing" / "x"))
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "demo-data", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("flag", [["--local_rank=2"], ["--local-rank", "2"]])
def test_local_rank_from_the_launcher_reaches_the_env(monkeypatch, tmp_path, flag):
    # The `deepspeed` launcher puts --local_rank before the subcommand; the trainer reads LOCAL_RANK.
    from sevlm.commands import demo_data

    seen = {}

    def record(args):
        seen["rank"] = os.environ.get("LOCAL_RANK")
        return 0

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(demo_data, "run", record)
    assert cli.main([*flag, "demo-data", "--out", str(tmp_path / "o")]) == 0
    assert seen == {"rank": "2"}


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
                "allocate 13203876864 bytes."
            ),
            "out of memory (.*); use a smaller model \\(model.n_embd",
        ),
        (MemoryError(), "out of memory \\(MemoryError\\); use a smaller model"),
        (
            RuntimeError(
                "[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/3: "
                "file write failed"
            ),
            "could not write a file, the disk is probably full .*; free space",
        ),
        (
            OSError(28, "No space left on device", "/runs/r/checkpoints/step00000004/mp_rank_00_model_states.pt"),
            "/runs/r/checkpoints/step00000004/mp_rank_00_model_states.pt: No space left on device; free space on that "
            "disk",
        ),
    ],
)
def test_out_of_memory_and_disk_full_are_one_line_saying_what_to_change(monkeypatch, capsys, tmp_path, error, expected):
    import re

    from sevlm.commands import generate

    def fail(args):
        raise error

    monkeypatch.setattr(generate, "run", fail)
    assert cli.main(["generate", "--run", str(tmp_path), "--out", str(tmp_path / "p.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.fullmatch(f"sevlm generate: error: {expected}.*", err), err


def test_other_runtime_errors_keep_their_traceback(monkeypatch, tmp_path):
    from sevlm.commands import generate

    def fail(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(generate, "run", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["generate", "--run", str(tmp_path), "--out", str(tmp_path / "p.jsonl")])


def test_predict_takes_folders_and_globs_and_names_a_file_that_exists(tmp_path, capsys):
    from sevlm.cli import main
    from sevlm.commands.predict import image_files

    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.jpg", "a/b/y.png", "a/notes.txt", "z.JPG"):
        (tmp_path / name).write_bytes(b"x")
    t = str(tmp_path)
    assert image_files([f"{t}/a"]) == [f"{t}/a/b/y.png", f"{t}/a/x.jpg"]  # every image under it, sorted
    assert image_files([f"{t}/*.JPG", f"{t}/a/x.jpg", f"{t}/a/**/*.jpg"]) == [f"{t}/z.JPG", f"{t}/a/x.jpg"]
    with pytest.raises(DataError, match=r"a/x: file not found; did you mean .*a/x\.jpg\?"):
        image_files([f"{t}/a/x"])
    with pytest.raises(DataError, match=r"no file matches this pattern"):
        image_files([f"{t}/*.gif"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: folder holds no image file"):
        image_files([f"{t}/empty"])
    # through the command line: one line naming the file, before any model is loaded
    assert main(["predict", "--run", f"{t}/no-run", f"{t}/a/x"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean" in err[0]


def test_the_top_level_help_lists_every_command_without_loading_torch():
    """`sevlm --help` builds no command's arguments, so no command's choices pull torch in."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from sevlm.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"
    for name in cli.COMMANDS:
        assert f"    {name}" in done.stdout


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["prepare", "--out", "demo"], "prepare"),
        (["--debug", "--local_rank", "2", "train", "--config", "demo"], "train"),
        (["--local_rank=0", "evaluate"], "evaluate"),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_invoked_command_is_the_first_command_word(argv, command):
    assert cli.invoked_command(argv) == command


def test_a_commands_help_still_shows_its_own_arguments(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["prepare", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--artemis-csv" in out and "examples:" in out
    with pytest.raises(SystemExit):  # another command's flag is not this one's
        cli.main(["prepare", "--encoder", "tiny-random"])
