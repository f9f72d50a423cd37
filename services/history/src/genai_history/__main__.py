from genai_history.main import main

main()
