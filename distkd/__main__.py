from distkd.cli import main

raise SystemExit(main())
