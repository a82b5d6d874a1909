"""What a study shows: leaderboard frames, the terminal and markdown, pictures, the report
page, the exported model and its card, and predictions with it."""
