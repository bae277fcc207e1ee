"""An executor spun on a daemon thread that stops before the executor shuts down (the bench and player CLIs)."""
from __future__ import annotations

import threading


class Spinner:
    """Spin ``executor`` on a daemon thread in short turns; :meth:`stop` ends the turns, joins the thread, and only
    then shuts the executor down. ``Executor.shutdown`` from another thread while ``spin()`` was inside a turn
    destroyed a guard condition that the turn still triggered (``InvalidHandle``, once in a CI run of
    ``kp2d bench-node``)."""

    def __init__(self, executor, turn_s: float = 0.05):
        self.executor = executor
        self.turn_s = turn_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while not self._stop.is_set():
                self.executor.spin_once(timeout_sec=self.turn_s)
        except ExternalShutdownException:  # the context went down under it
            pass

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the turns, wait for the last, then shut the executor down (a callback in progress finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        self.executor.shutdown(timeout_sec=timeout_s)
