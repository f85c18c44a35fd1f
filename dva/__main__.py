from dva.cli import main

main()
