from humpback_ds.cli import main

raise SystemExit(main())
