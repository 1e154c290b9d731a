"""The Streamlit leaderboard (``bench leaderboard``). ``data`` holds its pure, testable data shaping."""
