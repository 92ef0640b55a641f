from tropfx.cli import main

raise SystemExit(main())
