"""SIGTERM handling of the plugin's commands (nnunetv2_dmaf.user_errors)."""
import signal
import subprocess
import sys
import textwrap

# Installs the command's SIGTERM handler, forks a child (as nnU-Net's planner does through a fork
# multiprocessing.Pool), terminates the child, then sends SIGTERM to itself.
_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, signal, time
    from nnunetv2_dmaf.user_errors import Terminated, install_sigterm_handler

    install_sigterm_handler()
    ready = multiprocessing.get_context("fork").Event()

    def sleep_forever():
        ready.set()
        time.sleep(600)

    child = multiprocessing.get_context("fork").Process(target=sleep_forever)
    child.start()
    ready.wait(60)
    child.terminate()
    child.join(60)
    print("child exitcode", child.exitcode, flush=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("parent not interrupted")
    except Terminated:
        print("parent raised Terminated")
""")


def test_sigterm_kills_forked_children_but_interrupts_the_command_itself():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # A forked child dies of SIGTERM (exitcode -15) instead of raising Terminated in Python (exitcode 1).
    assert f"child exitcode {-signal.SIGTERM}" in out.stdout, out.stdout + out.stderr
    assert "Terminated" not in out.stderr, out.stderr
    # The process that installed the handler still turns SIGTERM into Terminated (cleanup runs).
    assert "parent raised Terminated" in out.stdout, out.stdout


def test_every_command_reports_a_bad_option_in_one_line(capsys):
    """argparse's usage block would be several lines: every console script that takes options
    (all but nnUNetv2_dmaf_trainer_path) ends a bad option with one line and exit status 2."""
    from importlib.metadata import distribution

    from command_exit import exit_status

    scripts = [e for e in distribution("nnunetv2_dmaf").entry_points if e.group == "console_scripts"
               and e.name != "nnUNetv2_dmaf_trainer_path"]
    assert len(scripts) >= 12
    for entry in scripts:
        capsys.readouterr()
        status = exit_status(entry.load(), ["--no-such-option"])
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1 and "(see " in error, (entry.name, error)


def test_a_file_system_refusing_a_file_is_one_line_naming_it_and_other_os_errors_are_bugs(capsys):
    import errno

    import pytest

    from command_exit import exit_status
    from nnunetv2_dmaf.user_errors import run_main

    def disk_full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/case.nii.gz")

    assert exit_status(lambda argv: run_main(disk_full, argv), []) == 1
    assert capsys.readouterr().err.endswith("error: /data/out/case.nii.gz: No space left on device\n")

    def our_bug(argv):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/wrong/path")

    with pytest.raises(FileNotFoundError):
        run_main(our_bug, [])


def test_a_full_disk_during_an_atomic_write_names_the_output_file(tmp_path, capsys):
    """write()/close() on a full disk raise OSError without a file name; the message names the output."""
    import errno

    from command_exit import exit_status
    from nnunetv2_dmaf.atomic_files import atomic_output, atomic_output_set, partial_outputs
    from nnunetv2_dmaf.user_errors import run_main

    def write_to_full_disk(argv):
        with atomic_output(tmp_path / "summary.csv") as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")

    assert exit_status(lambda argv: run_main(write_to_full_disk, argv), []) == 1
    assert capsys.readouterr().err.endswith(f"error: {tmp_path / 'summary.csv'}: No space left on device\n")
    assert partial_outputs(tmp_path) == []

    def export_to_full_disk(argv):
        with atomic_output_set(tmp_path / "case_001", [".npz", ".nii.gz"]):
            raise OSError(errno.ENOSPC, "No space left on device")

    assert exit_status(lambda argv: run_main(export_to_full_disk, argv), []) == 1
    assert capsys.readouterr().err.endswith(f"error: {tmp_path / 'case_001.nii.gz'}: No space left on device\n")
