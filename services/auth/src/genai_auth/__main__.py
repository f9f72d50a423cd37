from genai_auth.main import main

main()
