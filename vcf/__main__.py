"""Entry point of ``python -m vcf``."""

from vcf.cli import main

main()
