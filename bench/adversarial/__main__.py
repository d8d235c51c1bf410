from bench.adversarial.run import main

main()
