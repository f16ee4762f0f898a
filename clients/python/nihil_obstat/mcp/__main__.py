from nihil_obstat.mcp.server import main

main()
