from aggscope.cli import main

main()
