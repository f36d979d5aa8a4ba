"""housekeeping"""
