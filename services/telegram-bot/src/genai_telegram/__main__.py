from genai_telegram.main import main

main()
