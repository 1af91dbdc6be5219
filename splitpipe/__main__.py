from splitpipe.cli import main

raise SystemExit(main())
