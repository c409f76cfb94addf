"""What every package of the project may use: atomic files, flags from typed fields, a server process to wait for.

Standard library only, and none of our other packages: it sits under all of them.
"""
