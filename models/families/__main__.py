"""`python -m onnxvq.models.families NAME... | --all`: export families into the corpus."""

from onnxvq.models.families import main

raise SystemExit(main())
