"""What every package of the suite shares and nothing else: the user-error contract and the
front door of every command line (``errors``), and the one atomic file writer (``files``).

It imports no other package of the suite, so ``variants``, ``datamodules``, ``experiments`` and
``analysis`` can all depend on it without depending on each other.
"""
