"""``python -m dicom_node.cli``: the ``gazex`` command without its console script."""

import sys

from dicom_node.cli import main

sys.exit(main())
