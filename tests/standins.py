"""Stand-ins for the tests: accelerate's process state where no second process runs."""

import contextlib


class TwoProcessesAsMain:
    """accelerate's state as the main process of two sees it, in one process (it samples every segment)."""

    num_processes, is_main_process = 2, True

    @contextlib.contextmanager
    def split_between_processes(self, items):
        yield items

    def wait_for_everyone(self):
        pass
