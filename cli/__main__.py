"""`python -m hashtagkit.cli`: what torchrun starts (`torchrun ... -m hashtagkit.cli fit ...`)."""

from hashtagkit.cli.main import main

main()
