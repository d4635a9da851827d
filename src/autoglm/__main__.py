from autoglm.cli.main import main

main()
