from genai_adapter.main import main

main()
