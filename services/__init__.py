"""AdaSpec services: draft, verify and coordinator (each also runs as `adaspec serve NAME`)."""
