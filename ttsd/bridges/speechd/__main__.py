from ttsd.bridges.speechd.module import main

raise SystemExit(main())
