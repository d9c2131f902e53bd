"""``python -m services.warehouse_mock``: same as the ``steadfast-warehouse`` script."""

from services.warehouse_mock.cli import main

main()
