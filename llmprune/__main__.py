from llmprune.cli import main

main()
