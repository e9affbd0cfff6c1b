from ttsd.cli import main

raise SystemExit(main())
