"""``python -m mmplatform`` is the ``mmplatform`` console script."""

from mmplatform.cli import main

raise SystemExit(main())
