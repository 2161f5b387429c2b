from detoxrl.cli import main

raise SystemExit(main())
