"""Print the table of what each algorithm's clients send and which channel stages take it, from the algorithms'
declarations (docs/architecture.md and the README hold it as printed; tests/test_channel.py compares).

    python scripts/channel_table.py
"""

from fedsim.algorithms import message_table

if __name__ == "__main__":
    print(message_table())
