print("walship")
