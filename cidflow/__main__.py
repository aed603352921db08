from cidflow.cli import main

main()
