from diffvos.cli import main

raise SystemExit(main())
