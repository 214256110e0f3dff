from rlbench.cli import main

raise SystemExit(main())
