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
