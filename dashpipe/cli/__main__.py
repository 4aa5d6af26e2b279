from dashpipe.cli import main

raise SystemExit(main())
