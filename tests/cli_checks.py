"""What every bad-input test checks of a command's result: exit 2 and exactly one error line."""


def exit_status(main, argv) -> int:
    """``main(argv)``'s exit status, whether it returns it or a parser error exits with it (SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # progress bars aside
    assert len(lines) == 1 and lines[0].startswith("cascadev: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
