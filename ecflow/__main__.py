from ecflow.cli import main

main()
