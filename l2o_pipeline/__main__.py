from l2o_pipeline.main import main

main()
