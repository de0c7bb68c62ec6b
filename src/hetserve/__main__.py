from hetserve.cli import main

main()
