from genai_gateway.main import main

main()
