from __future__ import annotations

from st_leap.cli import main

if __name__ == "__main__":
    main()
